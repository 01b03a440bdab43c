// Streams one chat completion through the gateway with the official openai Node SDK
// and prints what the client saw as JSON, for the Python test to assert on.
import OpenAI from "openai";

const [baseURL, requestJson] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-node", maxRetries: 0 });
const request = JSON.parse(requestJson);
const seen = { content: "", ids: [], models: [], finishReasons: [], toolCalls: [], usage: null, chunks: 0 };

const stream = await client.chat.completions.create({ ...request, stream: true }, {
  headers: { "x-gateway-trace": "1" },
});
for await (const chunk of stream) {
  seen.chunks += 1;
  seen.ids.push(chunk.id);
  seen.models.push(chunk.model);
  if (chunk.usage) seen.usage = chunk.usage;
  for (const choice of chunk.choices) {
    seen.content += choice.delta?.content ?? "";
    for (const call of choice.delta?.tool_calls ?? []) seen.toolCalls.push(call);
    if (choice.finish_reason) seen.finishReasons.push(choice.finish_reason);
  }
}
console.log(JSON.stringify(seen));
