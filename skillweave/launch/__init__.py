"""Launchers on top of everything: Slurm through submitit."""
