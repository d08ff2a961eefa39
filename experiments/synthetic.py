"""`python -m experiments.synthetic`: see experiments/configs/synthetic.py for the settings."""
from experiments import cli

if __name__ == "__main__":
  cli.run("synthetic")
