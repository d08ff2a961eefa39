"""`python -m experiments.kinetics_sounds`: see experiments/configs/kinetics_sounds.py for the settings."""
from experiments import cli

if __name__ == "__main__":
  cli.run("kinetics_sounds")
