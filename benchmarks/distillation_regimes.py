"""Week 10's experiment outside the notebook: teacher, plain student and a distilled one, for any data size and budget.

    .venv/bin/python benchmarks/distillation_regimes.py --seed 1 --images 2000 --teacher-epochs 40 --student-epochs 60 --mode soft
    .venv/bin/python benchmarks/distillation_regimes.py --seed 1 --images 8000 --teacher-epochs 10 --student-epochs 15 --mode hard

The same steps as solutions/10_distillation.ipynb (the same models, seeds, loops and data), one distillation
mode per run, so that regimes can be compared side by side: BENCHMARKS.md records what it printed. It prints
one JSON line: the teacher's, the plain and the distilled student's test accuracy, the gain, each student's
agreement with the teacher's decisions, how often the teacher's argmax on an augmented training image is
its label (what hard distillation adds is the rest), and the seconds. A benchmark, not a test. OMP_NUM_THREADS=1 lets
two runs share a 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from vitlib import distill
from vitlib.configs import create_vit
from vitlib.data import eval_transform, load_dataset, train_transform
from vitlib.train import evaluate

STUDENT = dict(patch_size=7, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128)  # the notebook's student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=2000, help="the first N bundled training images")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--student-epochs", type=int, default=60)
    parser.add_argument("--teacher-width", type=int, default=16)
    parser.add_argument("--augment", default="basic", help="the students' augmentation")
    parser.add_argument("--teacher-augment", default="flip", help="the teacher's augmentation")
    parser.add_argument("--mode", default="soft", choices=("hard", "soft"))
    parser.add_argument("--tau", type=float, default=3.0)
    parser.add_argument("--lam", type=float, default=0.5)
    args = parser.parse_args()

    train_data, test_data = load_dataset("fashion-mnist-small", "train"), load_dataset("fashion-mnist-small", "test")
    images, labels = train_data.images[:args.images], train_data.labels[:args.images]  # (N, 1, 28, 28) uint8, (N,)
    test_data.transform = eval_transform(test_data)
    torch.manual_seed(args.seed)
    plain = create_vit("vit_course_28", **STUDENT)
    student = distill.DistilledViT(copy.deepcopy(plain))  # the same initial weights, plus the token and head
    torch.manual_seed(args.seed)
    teacher = distill.ConvTeacher(1, 10, args.teacher_width)
    start = time.perf_counter()
    distill.train_distillation(teacher, images, labels, train_transform(train_data, args.teacher_augment),
                               epochs=args.teacher_epochs,
                               lr=5e-3, seed=args.seed, progress=False)
    result = {"args": vars(args), "teacher": evaluate(teacher, test_data)["accuracy"],
              "teacher_seconds": round(time.perf_counter() - start)}
    augment = train_transform(train_data, args.augment)
    with torch.no_grad():  # how often the teacher's decision on a training image, as the students see it, is its label
        seen = augment(images, torch.Generator().manual_seed(args.seed))  # (N, 1, 28, 28) one augmented view each
        result["teacher_argmax_is_label"] = (teacher(seen).argmax(-1) == labels).float().mean().item()
    for name, model, tutor in (("plain", plain, None), ("distilled", student, teacher)):
        start = time.perf_counter()
        distill.train_distillation(model, images, labels, augment, epochs=args.student_epochs, teacher=tutor,
                                   distillation=args.mode, tau=args.tau, lam=args.lam, seed=args.seed, progress=False)
        result[name] = evaluate(model, test_data)["accuracy"]
        result[f"{name}_seconds"] = round(time.perf_counter() - start)
    with torch.no_grad():
        test_images = test_data.transform(test_data.images)  # (2000, 1, 28, 28)
        teacher_pred = teacher(test_images).argmax(-1)  # (2000,)
        for name, model in (("plain", plain), ("distilled", student)):
            result[f"{name}_agreement"] = (model(test_images).argmax(-1) == teacher_pred).float().mean().item()
    result["gain"] = result["distilled"] - result["plain"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
