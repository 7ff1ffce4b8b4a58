"""DVC stage `clean_text`: data/raw/captions.csv -> data/processed/captions.json (cleaned captions per image)."""

from captioner.core.atomic import write_json
from captioner.data.corpus import clean_captions
from captioner.core.params import load_params
from captioner.core.stage import run_main, stage_args


def main() -> None:
    """Clean every caption and keep those with at least `text.min_words` words."""
    args = stage_args(__doc__, inputs=["captions"], outputs=["out"])
    captions, stats = clean_captions(args.captions, load_params(args.params)["text"]["min_words"])
    write_json(args.out, captions)
    print(f"{args.out}: {stats}")


if __name__ == "__main__":
    run_main(main)
