"""Regenerate what is written from results/: README.md's generated sections, docs/speed.md,
analysis/results.tex and the 6e KL figures.

    python report.py
    python report.py --results-dir results --readme README.md --tex analysis/results.tex
"""
from reporting.writeup import main

if __name__ == '__main__':
    main()
