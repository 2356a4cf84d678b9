"""Data: sources (REDS, Vimeo-90K, Vid4, frame folders, video files), degradations, sampling."""
