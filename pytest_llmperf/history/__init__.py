"""The history: the one owner of the SQLite file every run is recorded in, and of every read and write of it.

Modules, one idea each (docs/history.md lists the queries):

* ``store``: ``HistoryStore``, opened to write (``open``) or to read (``open_read_only``), and every write;
* ``schema``: the tables and their migrations; ``errors``: ``HistoryError`` and its messages;
* ``disk`` and ``opening``: the one check of a file's bytes before SQLite opens it, and the connections;
* ``series_columns`` and ``record_rows``: how series keys and typed results map onto rows; ``ordering``: the
  order of runs (the newest run is defined once);
* typed queries: ``runs``, ``samples``, ``gating``, ``recent``;
* transfer formats: ``export``, ``merge``, ``benchmark_json``, ``prune``; and ``bulk`` for generated histories.

Nothing outside this package runs SQL.
"""
