"""`python -m experiments.synthetic_features`: see experiments/configs/synthetic_features.py."""
from experiments import cli

if __name__ == "__main__":
  cli.run("synthetic_features")
