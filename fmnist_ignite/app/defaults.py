"""Defaults the command line and the Python functions of the program share."""

FUSE_MAX = 16  # the most trials a sweep trains together (--fuse-max): their weights and gradients are a few MB
