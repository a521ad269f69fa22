"""Regenerate what is written from results/, and only the numbers: analysis/numbers.tex (a macro
for every number and table of the hand-written results chapter, analysis/results.tex), the 5b and
5c figures in analysis/figures/, the chapter's Markdown twin docs/results.md, README.md's generated
sections and docs/'s generated tables. Then `make -C analysis` builds analysis/hw2.pdf.

    python report.py
    python report.py --results-dir results --readme README.md --docs docs --analysis analysis
"""
from reporting.writeup import main

if __name__ == '__main__':
    main()
