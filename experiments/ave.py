"""`python -m experiments.ave`: see experiments/configs/ave.py for the settings."""
from experiments import cli

if __name__ == "__main__":
  cli.run("ave")
