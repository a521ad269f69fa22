"""Tools that are not the homework: the speed benchmark (bench) and the straightforward solution it
times beside the engine (straightforward), mutation testing (mutation), and the scripts of the
training queue and of a lent GPU. They import the engine, never the reporting.
"""
