"""How the lab is measured: the decode benchmark and its peers, the `bench*` commands and
`make lab`'s run and report. Imports from labkit, never the reverse."""
