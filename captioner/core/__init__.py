"""The foundation every other layer stands on: one-line errors, atomic writes, JSON files, settings and their schema, the stage runner, precision and native log control."""
