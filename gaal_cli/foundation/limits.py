"""Bounds on what gaal reads, shared by the config (which refuses a setting past them) and the
checks of untrusted files (which refuse a file recording one): a leaf, imported by both."""

# images are decoded to a square of this side at most: the paper trains at 128 and ImageNet
# backbones at 224-384, and the image cache holds size^2 x 3 bytes per image
IMAGE_SIZE_MAX = 1024
