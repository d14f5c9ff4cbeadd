"""`v4 bench`: measure any V4 endpoint (the local engine through `v4 serve`, DeepSeek's API, SGLang, vLLM)
on the user's own files: speed, long-range recall, tool calls, JSON output and cost.

One concern per module: `client` (a streamed request and its timings; OpenAI's format), `anthropic`
(the same client in Anthropic's Messages format), `haystack` (prompts of a chosen token length, needles
at chosen depths), `runner` (a run's settings and records), the suites (`speed`, `recall`, `tools`,
`jsonmode`, `cost`; `suites` runs them in order), `scorers` (pure scores of one answer), `report` (the
JSON report, its schema, compare), `chart` (terminal chart and PNG) and `local` (`--model`: a
`v4 serve` child process on a loopback port).
"""
