"""Jacobian Penalty Playground: the penalty library, training loop, robustness checks and app."""
