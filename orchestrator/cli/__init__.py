"""The `qkdnet` command line: a thin parser and one module per verb group.

What belongs here: argument parsing (`main`), the verbs (deployment, faults, demos), and how
they print (tables, graphs, live views). A verb asks the plan, a runtime or a client to do
the work, and imports only what it needs, so that each answers quickly.
"""
