// Streams one response through the gateway with the official openai Node SDK (its
// `responses.stream` helper, which rebuilds the response from the events and throws on
// any it cannot place) and prints what the client saw as JSON, for the Python test.
import OpenAI from "openai";

const [baseURL, requestJson] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "sk-node", maxRetries: 0, timeout: 30_000 });
const request = JSON.parse(requestJson);
const seen = { deltas: [], types: [], sequenceNumbers: [] };

const stream = client.responses.stream(request);
for await (const event of stream) {
  seen.types.push(event.type);
  seen.sequenceNumbers.push(event.sequence_number);
  if (event.type === "response.output_text.delta") seen.deltas.push(event.delta);
}
const final = await stream.finalResponse();
seen.id = final.id;
seen.status = final.status;
seen.outputText = final.output_text;
seen.outputTypes = final.output.map((item) => item.type);
console.log(JSON.stringify(seen));
