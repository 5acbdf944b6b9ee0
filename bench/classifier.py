"""Time and accuracy of the data-specific detector (edm2lib.metrics.classifier) on Fashion-MNIST.

python bench/classifier.py [--epochs 2] [--train 60000] [--threads 1]: trains on the training split padded
to 32x32 RGB (the demo's transform), reports the wall time and the accuracy on the 10k test split; JSON in
bench/out/classifier.json.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from edm2lib.data.fashion_mnist import load_fashion_mnist
from edm2lib.metrics.classifier import accuracy, train_classifier


def pad32(x: np.ndarray) -> np.ndarray:
    out = np.zeros((len(x), 32, 32, 3), np.uint8)
    out[:, 2:30, 2:30, :] = x[..., None]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train", type=int, default=60000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    images, labels = load_fashion_mnist()
    x_train, y_train = pad32(images[: a.train]), labels[: a.train]
    x_test, y_test = pad32(images[60000:]), labels[60000:]
    start = time.perf_counter()
    net = train_classifier(x_train, y_train, 10, epochs=a.epochs, width=a.width, lr=a.lr)
    seconds = time.perf_counter() - start
    acc = accuracy(net, x_test, y_test)
    result = {
        **vars(a),
        "train_seconds": round(seconds, 1),
        "test_accuracy": acc,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "classifier.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
