"""The pure core: the values that flow through (chat, errors), the config and how it is read,
rows into requests (prompts, identity), structured output, the token, and the rate-limit
mechanisms (token buckets, clocks, a loop thread). Nothing here knows Spark or an endpoint."""
