"""`python -m experiments.crema_d`: see experiments/configs/crema_d.py for the settings."""
from experiments import cli

if __name__ == "__main__":
  cli.run("crema_d")
