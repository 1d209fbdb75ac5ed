"""A task.check.function for tests: right when the response has an odd number of characters (a mixed,
deterministic reward for a model that is always wrong on the task itself; responses that reach the
length cap are even, so some prompts have only wrong leaves and DAPO drops them and resamples)."""


def odd_length(answer: str, reference: str) -> bool:
    return len(answer) % 2 == 1
