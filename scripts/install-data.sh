#!/usr/bin/env bash
# Make the real Fashion-MNIST available as Debian's package dataset-fashion-mnist, where this machine
# allows (root with apt-get). Elsewhere, say how to get it; training can also download it
# (data.download=true).
set -uo pipefail
DIR=/usr/share/datasets/fashion-mnist
if ls "$DIR"/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing dataset-fashion-mnist (Debian package) ..."
  if apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    exit 0
  fi
  echo "warning: could not install dataset-fashion-mnist with apt-get" >&2
fi
echo "note: Fashion-MNIST is not installed system-wide; install Debian's dataset-fashion-mnist," \
     "put the four *-ubyte.gz files in data/FashionMNIST/raw/, or run with data.download=true" >&2
