"""The ``stt-streaming`` command line and the tools it calls.

cli.py          argv -> the command's tool (the parser, one function per command)
serve.py        ``serve`` (the worker) and ``whisper-server``, in the foreground
demo.py         ``demo``: nats-server, worker, publisher and subscriber in one process
stream.py       ``stream``: publish a WAV file as a live client would
tail.py         ``tail``: print the worker's output messages
console.py      one-line rendering of output messages (``tail``, ``demo``)
embedded.py     a worker in this process (``demo``, ``gateway``)
connection.py   connecting to NATS as a tool does
options.py      what the commands share: settings overrides (`given`) and `CliError`
error_docs.py   the generator of docs/errors.md
"""
