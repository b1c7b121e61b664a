"""`hemoseg synth OUT`: write the built-in synthetic head-CT dataset.

It gives every other command something to run on without patient data: a
Roboflow-style COCO export for `data`/`train`/`evaluate`, and DICOM series with
exact lesion volumes for `predict` and `export`.
"""

from __future__ import annotations

from hemoseg.errors import HemosegError


def register(sub):
    p = sub.add_parser(
        "synth", help="write a synthetic head-CT dataset (COCO slices + DICOM series)",
        description="Write a synthetic head-CT dataset with hemorrhage: OUT/coco/{train,valid,test} "
                    "(Roboflow-style COCO export) and OUT/dicom/<study>/ CT series with label volumes "
                    "and ground_truth.json. The same seed always writes the same bytes. Synthetic "
                    "images only resemble CT; results on them say nothing about patients.")
    p.add_argument("out", metavar="OUT", help="output directory (must be empty unless --force)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train", type=int, default=300, metavar="N", help="training slices (default 300)")
    p.add_argument("--valid", type=int, default=50, metavar="N", help="validation slices (default 50)")
    p.add_argument("--test", type=int, default=50, metavar="N", help="test slices (default 50)")
    p.add_argument("--size", type=int, default=256, metavar="S",
                   help="COCO image side in pixels (default 256)")
    p.add_argument("--windows", default="brain", metavar="W[,W,W]",
                   help="CT window(s) of the COCO images: 'brain' (default, grayscale like a Roboflow "
                        "export) or three, one per colour channel, e.g. 'brain,subdural,bone' "
                        "(names or L<level>/W<width>)")
    p.add_argument("--studies", type=int, default=3, metavar="N", help="DICOM studies (default 3)")
    p.add_argument("--slices", type=int, default=32, metavar="N", help="slices per DICOM study (default 32)")
    p.add_argument("--dicom-size", type=int, default=512, metavar="S",
                   help="DICOM image side in pixels (default 512)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty OUT, replacing its coco/ and dicom/ folders")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from hemoseg.data.preprocessing import IMAGE_WINDOW_COUNTS, parse_windows
    from hemoseg.data.synth import generate  # heavy imports only when used

    try:
        windows = parse_windows(args.windows)
    except ValueError as exc:
        raise HemosegError(f"--windows: {exc}") from None
    if len(windows) not in IMAGE_WINDOW_COUNTS:
        raise HemosegError(f"--windows: give 1 or 3 windows (an image holds gray or RGB), got {len(windows)}")

    if args.size > 4096 or args.dicom_size > 4096:
        raise HemosegError("image sizes above 4096 pixels are not supported")
    summary = generate(args.out, seed=args.seed, train=args.train, valid=args.valid, test=args.test,
                       size=args.size, studies=args.studies, slices=args.slices,
                       dicom_size=args.dicom_size, force=args.force, windows=windows)
    out = summary["out"]
    for split, info in summary["coco"].items():
        classes = ", ".join(f"{_short(name)} {n}" for name, n in info["images_per_class"].items())
        print(f"{out}/coco/{split}: {info['images']} images {args.size}x{args.size} from "
              f"{info['heads']} heads, {info['empty_images']} without lesions; images per class: {classes}")
    for name, gt in summary["dicom"].items():
        vols = ", ".join(f"{_short(c)} {v:.1f} mL" for c, v in gt["volumes_ml"].items() if v > 0)
        dz, ps, _ = gt["spacing_mm"]
        print(f"{out}/dicom/{name}: {gt['shape'][0]} slices {gt['shape'][2]}x{gt['shape'][1]}, "
              f"{ps} mm pixels, {dz} mm slices; {vols}")
    if summary["dicom"]:
        print(f"{out}/dicom/ground_truth.json: exact volumes and label volumes (axis order zyx)")
    sec = summary["seconds"]
    print(f"done in {sec['coco'] + sec['dicom']:.1f} s (seed {summary['seed']})")
    return 0


def _short(name: str) -> str:
    """Conventional abbreviations keep the summary on one line per item."""
    return {"Epidural hemorrhage": "EDH", "Intraparenchymal hemorrhage": "IPH",
            "Intraventricular hemorrhage": "IVH", "Subarachnoid hemorrhage": "SAH",
            "Subdural hemorrhage": "SDH", "Perihematomal edema": "edema"}.get(name, name)
