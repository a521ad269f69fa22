"""The engine: every part of the handout as settings (config) of one training loop (train) of its
model kind's objective (objectives), whose files modelfiles reads back; one evaluation (evaluate:
the test images it covers in subsets, a resumable importance-sampling pass in partial) and one set
of figures (figures); the data, writing files safely, the code's identity (student), each number's
reproduction (reproduce), moving runs between machines (transfer, and packs for reading them back),
grading a class (grading: its checks' process in checking, the verdict per part in verdicts) and
timing (timing); running one part (runs: its lock in locks, the devices in devices, reference runs
in reference) and several (jobs), and the notebooks (notebooks). It imports models.py and
losses.py and nothing above it.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: models.py, losses.py, results/
