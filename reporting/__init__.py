"""What is written from results/: one reader at the bottom (reader), the handout's answers with
their paired comparisons (answers), the chapter's numbers as LaTeX macros (numbers), the sentences
they pin (claims), the chapter as Markdown (markdown), the tables of the benchmark and mutation files (tables), a
student's runs against the reference (versus), each run directory's summary (summary), the results
chapter of the README and the PDF (writeup) and what the notebooks display (display), each
importing only those before it, the engine and the tools.
"""
