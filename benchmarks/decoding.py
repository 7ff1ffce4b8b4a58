"""Caption quality of trained bundles per beam size and length alpha, on a split of a pipeline checkout.

Decodes every image of the split (val by default: tune there, never on test) with each bundle at beam
sizes 1-5 and length alphas 0 / 0.5 / 1.0 / 1.5 (the pick among finished beams is by log p / length^alpha;
`--beams` and `--alphas` choose others) and prints BLEU-4, CIDEr-D and mean caption words per setting,
one table per bundle.

    python benchmarks/decoding.py BUNDLE... --data <a pipeline checkout> [--split val] [--beams 3] [--alphas 0.5 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

BEAMS = (1, 2, 3, 4, 5)
ALPHAS = (0.0, 0.5, 1.0, 1.5)


def main() -> None:
    from captioner.serving.api import Captioner
    from captioner.model.bundle import load_bundle
    from captioner.data.corpus import read_captions
    from captioner.evaluation import split_images
    from captioner.vision.feature_store import FEATURES_FILE, FeatureReader
    from captioner.model.metrics import caption_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="model bundle folders (models/captioner)")
    parser.add_argument("--data", default=".", help="project root with data/raw, data/features, data/processed")
    parser.add_argument("--split", default="val")
    parser.add_argument("--beams", type=int, nargs="+", default=BEAMS, help="beam sizes (1 = greedy)")
    parser.add_argument("--alphas", type=float, nargs="+", default=ALPHAS, help="length alphas")
    args = parser.parse_args()
    root = Path(args.data)
    references = read_captions(root / "data/processed/captions.json")
    reader = FeatureReader(root / "data/features" / FEATURES_FILE)
    row_of = {name: i for i, name in enumerate(reader.names)}
    names = [n for n in split_images(root / "data/raw/splits.json", args.split) if n in row_of and references.get(n)]
    features = reader[[row_of[n] for n in names]]
    for bundle_dir in args.bundles:
        captioner = Captioner(load_bundle(bundle_dir))
        print(f"\n{bundle_dir}: {len(names)} {args.split} images; BLEU-4 / CIDEr-D / words per caption\n")
        alphas = args.alphas
        print("| beam | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |")
        print("|---" * (len(alphas) + 1) + "|")
        for beam in args.beams:
            cells = []
            for alpha in alphas[:1] if beam == 1 else alphas:  # greedy has one candidate: alpha changes nothing
                captions = [r.caption for r in captioner.caption_features(features, beam, length_alpha=alpha)]
                scores = caption_scores({n: references[n] for n in names}, dict(zip(names, captions)))
                words = sum(len(c.split()) for c in captions) / len(captions)
                cells.append(f"{scores['bleu4']:.4f} / {scores['cider']:.4f} / {words:.1f}")
            print(f"| {beam} | " + " | ".join(cells) + " |" * (len(alphas) - len(cells) + 1))


if __name__ == "__main__":
    main()
