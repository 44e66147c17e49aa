#!/usr/bin/env python3
"""A handful of small synthetic training images for tests and the quick start (tests/data/train/images/):
four 48x40 / 40x56 PNGs of coloured shapes, one JPEG, with a caption file for two of them, and a metadata.jsonl
variant in tests/data/train/images_meta/. Deterministic (numpy seed 0). Needs numpy and Pillow."""
import json, os
import numpy as np
from PIL import Image, ImageDraw

root = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "train")
rs = np.random.RandomState(0)
specs = [("dog_0.png", (48, 40), (200, 120, 40)), ("dog_1.png", (40, 56), (180, 100, 60)),
         ("dog_2.png", (48, 48), (210, 140, 50)), ("dog_3.jpg", (56, 40), (190, 110, 30))]
for sub in ["images", "images_meta"]:
    os.makedirs(os.path.join(root, sub), exist_ok=True)
meta = []
for i, (name, (w, h), color) in enumerate(specs):
    bg = tuple(int(x) for x in rs.randint(0, 80, size=3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    cx, cy = w // 2 + rs.randint(-4, 5), h // 2 + rs.randint(-4, 5)
    d.ellipse([cx - 12, cy - 10, cx + 12, cy + 10], fill=color)
    d.ellipse([cx + 6, cy - 16, cx + 16, cy - 6], fill=color)
    d.rectangle([0, h - 6, w, h], fill=(30, 120, 40))
    arr = np.asarray(img).astype(np.int16) + rs.randint(-6, 7, size=(h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    for sub in ["images", "images_meta"]:
        path = os.path.join(root, sub, name)
        img.save(path, quality=92) if name.endswith(".jpg") else img.save(path)
    meta.append({"file_name": name, "caption": f"a photo of sks dog, view {i}"})
for i in (0, 1):
    with open(os.path.join(root, "images", os.path.splitext(specs[i][0])[0] + ".txt"), "w") as f:
        f.write(f"a photo of sks dog on grass, number {i}\n")
with open(os.path.join(root, "images_meta", "metadata.jsonl"), "w") as f:
    for m in meta:
        f.write(json.dumps(m) + "\n")
print("wrote", root)
