"""The algorithm: advantage estimators (`advantage`), policy losses (`loss`), reward shaping and
dynamic sampling (`reward`), and their configs (`config`)."""
