"""The async chat client of one Spark task: aiohttp, retries (tenacity), the limiter it is given,
its token source and fatal-answer guard, and the engine that keeps a window of requests in
flight on a private event loop. Knows nothing of Spark."""
