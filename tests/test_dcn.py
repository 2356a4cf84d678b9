"""Pure-PyTorch modulated deformable convolution vs an independent slow reference."""

import pytest
import torch
import torch.nn.functional as F

from mgvsr.models.dcn import DCNv2Pack, ModulatedDeformConv2d, modulated_deform_conv2d


def bilinear_at(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sample img (C, H, W) at float positions y, x (P,) -> (C, P); corners outside count as zero."""
    _, h, w = img.shape
    y0, x0 = torch.floor(y), torch.floor(x)
    out = img.new_zeros(img.shape[0], y.shape[0])
    for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            iy = cy.clamp(0, h - 1).long()
            ix = cx.clamp(0, w - 1).long()
            vals = img[:, iy, ix] * (wy * wx * inside)
            out = out + vals
    return out


def reference_dcn(x, offset, mask, weight, bias, stride, padding, dilation, groups, dg):
    """Loops over batch, deformable group and kernel tap; explicit bilinear sampling."""
    n, c, h, w = x.shape
    c_out, cpg, kh, kw = weight.shape
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    oy, ox = torch.meshgrid(torch.arange(h_out, dtype=x.dtype), torch.arange(w_out, dtype=x.dtype), indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    cdg = c // dg
    outs = []
    for b in range(n):
        cols = x.new_zeros(c, kh * kw, h_out * w_out)
        col_list = [[None] * (kh * kw) for _ in range(dg)]
        for g in range(dg):
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    dy = offset[b, 2 * (g * kh * kw + k)].reshape(-1)
                    dx = offset[b, 2 * (g * kh * kw + k) + 1].reshape(-1)
                    m = mask[b, g * kh * kw + k].reshape(-1)
                    py = oy * stride - padding + i * dilation + dy
                    px = ox * stride - padding + j * dilation + dx
                    col_list[g][k] = bilinear_at(x[b, g * cdg : (g + 1) * cdg], py, px) * m
        cols = torch.stack([torch.stack(col_list[g], dim=1) for g in range(dg)], dim=0)  # dg, cdg, K, P
        cols = cols.reshape(c, kh * kw, -1)
        out = []
        opg = c_out // groups
        for gr in range(groups):
            wg = weight[gr * opg : (gr + 1) * opg].reshape(opg, -1)
            cg = cols[gr * cpg : (gr + 1) * cpg].reshape(cpg * kh * kw, -1)
            out.append(wg @ cg)
        out = torch.cat(out, 0).reshape(c_out, h_out, w_out)
        if bias is not None:
            out = out + bias.view(-1, 1, 1)
        outs.append(out)
    return torch.stack(outs)


CASES = [
    # c, c_out, h, w, k, stride, pad, dil, groups, dg
    (4, 6, 7, 9, 3, 1, 1, 1, 1, 2),
    (8, 4, 8, 6, 3, 2, 2, 2, 2, 4),
    (3, 5, 5, 5, 1, 1, 0, 1, 1, 1),
]


def _random_inputs(c, c_out, h, w, k, stride, pad, dil, groups, dg, dtype=torch.float64):
    h_out = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    x = torch.randn(2, c, h, w, dtype=dtype)
    # Offsets up to +-3 px reach outside the image; keep away from integers (kinks of bilinear).
    offset = (torch.rand(2, 2 * dg * k * k, h_out, w_out, dtype=dtype) - 0.5) * 6
    offset = torch.where((offset - offset.round()).abs() < 0.02, offset + 0.05, offset)
    mask = torch.rand(2, dg * k * k, h_out, w_out, dtype=dtype)
    weight = torch.randn(c_out, c // groups, k, k, dtype=dtype)
    bias = torch.randn(c_out, dtype=dtype)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_forward_and_backward(case):
    c, c_out, h, w, k, stride, pad, dil, groups, dg = case
    tensors = _random_inputs(*case)
    ours_in = [t.clone().requires_grad_(True) for t in tensors]
    ref_in = [t.clone().requires_grad_(True) for t in tensors]
    ours = modulated_deform_conv2d(*ours_in, stride=stride, padding=pad, dilation=dil, groups=groups)
    ref = reference_dcn(*ref_in, stride, pad, dil, groups, dg)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    upstream = torch.randn_like(ref)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name, a, b in zip(("input", "offset", "mask", "weight", "bias"), ours_in, ref_in):
        assert a.grad is not None and torch.isfinite(a.grad).all(), name
        assert a.grad.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=f"gradient of {name}")


def test_float32_matches_reference():
    case = CASES[0]
    x, offset, mask, weight, bias = _random_inputs(*case, dtype=torch.float32)
    ours = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, 1)
    ref = reference_dcn(x.double(), offset.double(), mask.double(), weight.double(), bias.double(), 1, 1, 1, 1, 2)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)


def test_gradcheck_small():
    """Finite differences agree with autograd (float64, tiny sizes, fast mode)."""
    tensors = _random_inputs(2, 2, 3, 4, 3, 1, 1, 1, 1, 1)
    args = [t.requires_grad_(True) for t in tensors]
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, 1, 1, 1, 1), args, atol=1e-6, fast_mode=True
    )


@pytest.mark.parametrize("stride,pad,dil,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)])
def test_zero_offset_unit_mask_is_conv2d(stride, pad, dil, groups):
    x = torch.randn(2, 8, 9, 11)
    weight = torch.randn(6, 8 // groups, 3, 3)
    bias = torch.randn(6)
    expected = F.conv2d(x, weight, bias, stride, pad, dil, groups)
    h_out, w_out = expected.shape[-2:]
    dg = 4
    offset = torch.zeros(2, 2 * dg * 9, h_out, w_out)
    mask = torch.ones(2, dg * 9, h_out, w_out)
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, pad, dil, groups)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_offset_order_is_dy_then_dx():
    """A constant offset (dy, dx) = (0, 1) on every tap reads one column further right (then one row down)."""
    x = torch.randn(1, 2, 6, 7)
    weight = torch.randn(3, 2, 3, 3)
    offset = torch.zeros(1, 2 * 9, 6, 7)
    offset[:, 1::2] = 1.0  # odd channels = dx
    mask = torch.ones(1, 9, 6, 7)
    # Tap j of output column ox reads column ox + j - 1 + 1 of x (zero outside).
    expected = F.conv2d(F.pad(x, (1, 2, 1, 1))[..., 1:], weight)
    got = modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and even channels are dy: shift up by one
    offset = torch.zeros(1, 2 * 9, 6, 7)
    offset[:, 0::2] = 1.0
    got = modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 2))[..., 1:, :], weight)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dcnv2pack_offset_and_mask_layout():
    torch.manual_seed(1)
    layer = DCNv2Pack(8, 4, 3, padding=1, deformable_groups=2)
    assert layer.conv_offset.out_channels == 2 * 3 * 9
    x, feat = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 6, 5)
    # Zero-initialised conv_offset: offsets 0 and mask sigmoid(0) = 0.5.
    torch.testing.assert_close(layer(x, feat), 0.5 * F.conv2d(x, layer.weight, None, 1, 1) + layer.bias.view(1, -1, 1, 1))
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.1)
        layer.conv_offset.bias.normal_(0, 0.5)
    out = layer.conv_offset(feat)
    n = out.shape[1] // 3
    o1, o2, m = out[:, :n], out[:, n : 2 * n], out[:, 2 * n :]
    expected = modulated_deform_conv2d(
        x, torch.cat([o1, o2], 1), torch.sigmoid(m), layer.weight, layer.bias, 1, 1, 1, 1
    )
    torch.testing.assert_close(layer(x, feat), expected)


def test_module_and_errors():
    layer = ModulatedDeformConv2d(4, 4, 3, padding=1, deformable_groups=2)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset"):
        layer(x, torch.zeros(1, 10, 5, 5), torch.ones(1, 18, 5, 5))
    with pytest.raises(ValueError, match="mask"):
        layer(x, torch.zeros(1, 36, 5, 5), torch.ones(1, 9, 5, 5))
    with pytest.raises(ValueError, match="deformable_groups"):
        ModulatedDeformConv2d(6, 4, 3, deformable_groups=4)
