"""Built-in ``modaloom data convert`` formats (registry kind ``converter``): Karpathy's COCO and
Flickr30K splits, MSR-VTT, WebVid, AudioCaps, VQA v2 and VALOR-32K. Each module imports only
`modaloom.core` (and its siblings here)."""
