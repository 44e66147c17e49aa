"""Inputs of the benchmark, made on the spot with the standard library only: training images (random RGB PNGs:
the model's weights are random too, so content does not matter, only the size) and a captions file."""
import argparse
import os
import random
import struct
import zlib

SUBJECTS = ["a red fox", "an old lighthouse", "a bowl of ramen", "a vintage motorcycle", "a snowy mountain cabin",
            "a golden retriever puppy", "a glass teapot", "a street market at dusk", "a koi pond", "a jazz trio"]
PLACES = ["in the rain", "at sunrise", "under neon lights", "in a misty forest", "on a wooden table",
          "by the sea", "in a busy city square", "on the moon", "in a library", "in a field of lavender"]
STYLES = ["photograph, 35mm film, shallow depth of field", "watercolor painting with soft edges",
          "highly detailed digital illustration, dramatic lighting", "isometric 3d render, pastel colors",
          "charcoal sketch on textured paper", "studio portrait, softbox lighting, sharp focus",
          "oil painting in the style of the old masters", "flat vector art, bold outlines",
          "cinematic still, anamorphic",
          "macro photograph, extreme detail"]


def write_png(path, width, height, seed):
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + rng.randbytes(width * 3) for _ in range(height))  # filter 0 per row, 8-bit RGB

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", required=True, help="folder to write the images into")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--captions", required=True, help="captions file to write")
    p.add_argument("--num-captions", type=int, default=100)
    args = p.parse_args()
    os.makedirs(args.images, exist_ok=True)
    for i in range(args.count):
        write_png(os.path.join(args.images, f"{i:03d}.png"), args.size, args.size, i)
    with open(args.captions, "w") as f:
        for i in range(args.num_captions):
            f.write(f"{SUBJECTS[i % 10]} {PLACES[(i // 10) % 10]}, {STYLES[(i * 7) % 10]}\n")


if __name__ == "__main__":
    main()
