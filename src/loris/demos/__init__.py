"""Self-contained demos: a task with an exact automatic score, a short training run, before/after."""
