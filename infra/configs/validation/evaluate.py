"""Evaluate a domain classifier on the validation sets of evaluate_domain.yaml (until `trait classifier evaluate`
is a CLI command, the same call):

    python infra/configs/validation/evaluate.py MODEL_DIR [--config infra/configs/validation/evaluate_domain.yaml]

Prints the markdown table; writes validation.json / validation.md and the card's validation block in MODEL_DIR.
"""

from __future__ import annotations

import argparse

from spark_jobs.classifier_eval import EvaluateConfig, evaluate_classifier, markdown
from trait.config.loading import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--config", default="infra/configs/validation/evaluate_domain.yaml")
    ap.add_argument("--exclude-training", action="store_true", help="drop documents the model trained on")
    args = ap.parse_args()
    cfg = load_config(EvaluateConfig, args.config, {"exclude_training": args.exclude_training},
                      vars={"model": args.model})
    print(markdown(evaluate_classifier(cfg), samples=False))


if __name__ == "__main__":
    main()
