"""mamba-agent-sort: a worked example of a mamba-agent plugin (docs/extending.md).

  task.py    the `sort` task: its problems, tools, oracle and checker
  tool.py    SortedTape, the tool that keeps what the model wrote in sorted order
  policy.py  the `window` policy: an MLP over the last k tokens
"""
