"""BasicVSR++ (Chan et al., CVPR 2022): second-order grid propagation with flow-guided deformable alignment.

Shapes: input LR clip (B, T, 3, h, w), float in [0, 1]; output (B, T, 3, 4h, 4w), any T >= 1 and
h, w >= 1 (SPyNet resizes its input to multiples of 32 internally, so no padding is needed here;
BasicSR asserts h, w >= 64 because SPyNet's coarsest level is then at least 2x2, which is a quality
note, not a shape requirement). Module names, parameter shapes and constructor arguments match
BasicSR's ``basicsr/archs/basicvsrpp_arch.py`` (``BasicVSRPlusPlus``), so its checkpoints (and
MMagic's ``BasicVSRPlusPlusNet`` ones, after :func:`mgvsr.models.weights.mmagic_to_basicsr`) load
with strict=True. Unlike BasicSR, the deformable alignment never depends on CUDA: it runs on the
pure-PyTorch DCNv2 of :mod:`mgvsr.models.dcn` (or ``torchvision.ops.deform_conv2d``, see there).

Forward pass:

1. ``feat_extract``: per-frame features (a conv + 5 residual blocks).
2. Flows between neighbouring frames in both directions (one batched SPyNet call).
3. Four propagation branches in the order ``backward_1, forward_1, backward_2, forward_2``. Branch
   ``k`` visits the frames backward or forward in time; at each frame it aligns the previous two
   propagated features with :class:`SecondOrderDeformableAlignment` (offsets = optical flow plus a
   learned residue bounded by ``max_residue_magnitude``), concatenates the frame's spatial feature,
   the features of the branches run before it, and the aligned feature, and adds the output of its
   residual trunk ``backbone[k]`` (grid propagation).
4. Per frame: ``reconstruction`` (a conv + 5 residual blocks over the five features) and the x4 head.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mgvsr.models.basicvsr import HR_FEAT, RecurrentVSRBase, warp
from mgvsr.models.blocks import ConvResidualBlocks, check_clip
from mgvsr.models.dcn import ModulatedDeformConv2d, deform_conv
from mgvsr.models.spynet import SpyNet

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
DEFORMABLE_GROUPS = 16  # fixed in BasicSR / MMagic


class SecondOrderDeformableAlignment(ModulatedDeformConv2d):
    """DCNv2 over the concatenated features of the two previous frames, guided by their flows.

    ``conv_offset`` (4 convs, the last zero-initialised) reads the warped features, the current
    frame's feature and both flows, and predicts a residue ``o`` (bounded by
    ``max_residue_magnitude * tanh``) and a mask. The offsets of the first half of the deformable
    groups (the frame i-1 feature) are ``o + flow_1`` and of the second half (frame i-2) ``o +
    flow_2``, flows converted to the (dy, dx) order of the DCN offsets.
    """

    def __init__(self, *args, max_residue_magnitude: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_residue_magnitude = max_residue_magnitude
        c = self.out_channels
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * c + 4, c, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(c, c, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(c, 3 * taps * self.deformable_groups, 3, 1, 1),
        )
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, extra_feat: torch.Tensor, flow_1: torch.Tensor, flow_2: torch.Tensor
    ) -> torch.Tensor:
        out = self.conv_offset(torch.cat([extra_feat, flow_1, flow_2], dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        residue = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        res_1, res_2 = torch.chunk(residue, 2, dim=1)
        # Flows are (dx, dy); DCN offsets are (dy, dx) pairs, one pair per group and tap.
        offset_1 = res_1 + flow_1.flip(1).repeat(1, res_1.shape[1] // 2, 1, 1)
        offset_2 = res_2 + flow_2.flip(1).repeat(1, res_2.shape[1] // 2, 1, 1)
        offset = torch.cat([offset_1, offset_2], dim=1)
        gate = torch.sigmoid(mask)
        stride, padding, dilation = self.stride, self.padding, self.dilation
        return deform_conv(x, offset, gate, self.weight, self.bias, stride, padding, dilation, self.groups)


class BasicVSRPlusPlus(RecurrentVSRBase):
    """BasicVSR++ with BasicSR's arguments: ``mid_channels`` (width), ``num_blocks`` (residual blocks
    per propagation branch), ``max_residue_magnitude`` (bound of the learned offset residue),
    ``is_low_res_input`` (True: x4 SR; False: same-size restoration of HR input, flows on its
    bicubic x1/4 version, h and w must be multiples of 4), ``spynet_path`` (pretrained SPyNet),
    ``cpu_cache_length`` (clips longer than this keep intermediate features on the CPU when running
    on CUDA, as BasicSR). ``head_feat`` narrows the HR part of the head (BasicSR: 64).

    ``mid_channels`` must be a multiple of 8 (the DCN splits 2 * mid_channels into 16 groups).
    """

    def __init__(
        self,
        mid_channels: int = 64,
        num_blocks: int = 7,
        max_residue_magnitude: float = 10.0,
        is_low_res_input: bool = True,
        spynet_path: Optional[str] = None,
        cpu_cache_length: int = 100,
        head_feat: int = HR_FEAT,
    ) -> None:
        super().__init__()
        if mid_channels < 1 or (2 * mid_channels) % DEFORMABLE_GROUPS or num_blocks < 0:
            raise ValueError(
                f"BasicVSRPlusPlus: mid_channels must be a positive multiple of 8 and num_blocks >= 0, "
                f"got {mid_channels}, {num_blocks}"
            )
        self.mid_channels = mid_channels
        self.is_low_res_input = is_low_res_input
        self.cpu_cache_length = cpu_cache_length
        self.spynet = SpyNet(spynet_path)
        if is_low_res_input:
            self.feat_extract: nn.Module = ConvResidualBlocks(3, mid_channels, 5)
        else:
            self.feat_extract = nn.Sequential(
                nn.Conv2d(3, mid_channels, 3, 2, 1),
                nn.LeakyReLU(negative_slope=0.1, inplace=True),
                nn.Conv2d(mid_channels, mid_channels, 3, 2, 1),
                nn.LeakyReLU(negative_slope=0.1, inplace=True),
                ConvResidualBlocks(mid_channels, mid_channels, 5),
            )
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = SecondOrderDeformableAlignment(
                2 * mid_channels,
                mid_channels,
                3,
                padding=1,
                deformable_groups=DEFORMABLE_GROUPS,
                max_residue_magnitude=max_residue_magnitude,
            )
            self.backbone[name] = ConvResidualBlocks((2 + i) * mid_channels, mid_channels, num_blocks)
        self.reconstruction = ConvResidualBlocks(5 * mid_channels, mid_channels, 5)
        self._make_head(mid_channels, head_feat)

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def is_mirror_extended(x: torch.Tensor) -> bool:
        """True when the clip is a sequence followed by its reverse (BasicSR's test-time flip): the
        forward flows are then the backward flows reversed and need no SPyNet call. Never on the
        ``meta`` device (FLOP counting), where the values are unknown."""
        t = x.shape[1]
        if t % 2 or x.device.type == "meta":
            return False
        first, second = torch.chunk(x, 2, dim=1)
        return bool(torch.equal(first, second.flip(1)))

    def flows(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward, backward) flows, each (B, T-1, 2, h, w): ``backward[:, i]`` warps frame i+1 onto
        frame i, ``forward[:, i]`` frame i onto frame i+1."""
        b, t, c, h, w = lr.shape
        if self.is_mirror_extended(lr):
            backward = self.spynet(lr[:, :-1].reshape(-1, c, h, w), lr[:, 1:].reshape(-1, c, h, w))
            backward = backward.view(b, t - 1, 2, h, w)
            return backward.flip(1), backward
        forward, backward = self.compute_flows(lr)
        assert forward is not None and backward is not None
        return forward, backward

    def propagate(self, feats: dict[str, list[torch.Tensor]], flows: torch.Tensor, name: str, cache) -> None:
        """Run branch ``name`` over the frames; appends its per-frame features to ``feats[name]``
        (in frame order). ``flows`` are the flows of that direction; ``cache`` moves stored tensors."""
        t = len(feats["spatial"])
        backward = name.startswith("backward")
        order = list(range(t - 1, -1, -1)) if backward else list(range(t))
        earlier = [k for k in feats if k not in ("spatial", name)]  # branches that ran before
        device = feats["spatial"][0].device if not cache.enabled else cache.device
        outs: list[torch.Tensor] = []  # in visiting order
        feat_prop = flows.new_zeros(flows.shape[0], self.mid_channels, *flows.shape[-2:]).to(device)
        for i, idx in enumerate(order):
            current = cache.load(feats["spatial"][idx])
            if i > 0:
                # flows[:, k] maps between frames k and k+1: the frame just visited is idx+1 (backward)
                # or idx-1 (forward), so the flow of this step is at idx (backward) or idx-1 (forward).
                flow_1 = cache.load(flows[:, idx if backward else idx - 1])
                cond_1 = warp(feat_prop, flow_1)
                feat_2 = torch.zeros_like(feat_prop)
                flow_2 = torch.zeros_like(flow_1)
                cond_2 = torch.zeros_like(cond_1)
                if i > 1:  # second order: the feature two frames back, warped with the chained flow
                    feat_2 = cache.load(outs[-2])
                    step_2 = cache.load(flows[:, idx + 1 if backward else idx - 2])
                    flow_2 = flow_1 + warp(step_2, flow_1)
                    cond_2 = warp(feat_2, flow_2)
                cond = torch.cat([cond_1, current, cond_2], dim=1)
                feat_prop = self.deform_align[name](torch.cat([feat_prop, feat_2], dim=1), cond, flow_1, flow_2)
            inputs = [current] + [cache.load(feats[k][idx]) for k in earlier] + [feat_prop]
            feat_prop = feat_prop + self.backbone[name](torch.cat(inputs, dim=1))
            outs.append(cache.store(feat_prop))
        feats[name] = outs[::-1] if backward else outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_clip(x, "BasicVSRPlusPlus input", min_size=1 if self.is_low_res_input else 4)
        b, t, c, h, w = x.shape
        cache = _FeatureCache(enabled=t > self.cpu_cache_length and x.is_cuda, device=x.device)
        if self.is_low_res_input:
            lr = x
        else:
            if h % 4 or w % 4:
                raise ValueError(f"BasicVSRPlusPlus (is_low_res_input=False): h, w must be multiples of 4, got {h}x{w}")
            lr = F.interpolate(x.reshape(-1, c, h, w), scale_factor=0.25, mode="bicubic").view(b, t, c, h // 4, w // 4)

        if cache.enabled:
            spatial = [cache.store(self.feat_extract(x[:, i])) for i in range(t)]
        else:
            feat = self.feat_extract(x.reshape(-1, c, h, w))
            feat = feat.view(b, t, *feat.shape[1:])
            spatial = [feat[:, i] for i in range(t)]
        feats: dict[str, list[torch.Tensor]] = {"spatial": spatial}

        if t > 1:
            flows_forward, flows_backward = self.flows(lr)
            flows_forward, flows_backward = cache.store(flows_forward), cache.store(flows_backward)
        else:  # one frame: no neighbours, so no alignment ever runs; shapes only
            flows_forward = flows_backward = lr.new_zeros(b, 0, 2, *spatial[0].shape[-2:])
        for name in BRANCHES:
            self.propagate(feats, flows_backward if name.startswith("backward") else flows_forward, name, cache)

        outputs = []
        for i in range(t):
            hr = torch.cat([cache.load(feats[k][i]) for k in ("spatial", *BRANCHES)], dim=1)
            hr = self.reconstruction(hr)
            if self.is_low_res_input:
                out = self.reconstruct(hr, x[:, i])
            else:
                out = self.reconstruct_residual(hr) + x[:, i]
            outputs.append(cache.store(out))
        return torch.stack(outputs, dim=1)

    def reconstruct_residual(self, feat: torch.Tensor) -> torch.Tensor:
        """The x4 head without the bilinear skip (for ``is_low_res_input=False``)."""
        out = F.leaky_relu(F.pixel_shuffle(self.upconv1(feat), 2), 0.1, inplace=True)
        out = F.leaky_relu(F.pixel_shuffle(self.upconv2(out), 2), 0.1, inplace=True)
        return self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1, inplace=True))


class _FeatureCache:
    """BasicSR's ``cpu_cache``: for long clips on CUDA, keep stored features on the CPU and bring
    each back to the device when it is used. Disabled, both methods return their input."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.device = device

    def store(self, x: torch.Tensor) -> torch.Tensor:
        return x.cpu() if self.enabled else x

    def load(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device) if self.enabled else x


def infer_basicvsrpp_fields(state: dict) -> Optional[dict]:
    """ModelConfig fields of a BasicVSR++ state dict (BasicSR names), or None if it is not one:
    width from ``feat_extract``'s first conv, depth from ``backbone.backward_1``'s blocks."""
    if "feat_extract.main.0.weight" not in state or "backbone.backward_1.main.0.weight" not in state:
        return None
    prefix = "backbone.backward_1.main.2."
    blocks = {k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix) and k.endswith("conv1.weight")}
    width = int(state["feat_extract.main.0.weight"].shape[0])
    fields = {"name": "basicvsrpp", "num_feat": width, "num_block": len(blocks)}
    if "conv_hr.weight" in state:
        fields["head_feat"] = int(state["conv_hr.weight"].shape[0])
    return fields
