"""The bandit controller: learn from the inference lake and delayed rewards, reweight live."""
