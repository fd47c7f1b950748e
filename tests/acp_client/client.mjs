// A real ACP client for the tests: the official TypeScript SDK (@agentclientprotocol/sdk)
// playing the IDE. It spawns the agent command, runs a JSON scenario, and prints a JSON
// transcript of everything that happened, in the order it happened, on stdout.
//
// usage: node client.mjs SCENARIO.json
//
// scenario: {
//   "agent": ["python", "-m", "punie", "agent", ...],  "cwd": "/abs", "env": {...},
//   "capabilities": {"fs": {"readTextFile": true, "writeTextFile": true}, "terminal": true},
//   "buffers": {"/abs/path": "text"},   // what fs/read_text_file serves (an editor's unsaved buffers)
//   "permission": "allow" | "allow_always" | "reject" | "cancel_turn",
//   "steps": [{"op": "new_session"}, {"op": "prompt", "text": "..."}, {"op": "load_session", "sessionId": "..."},
//             {"op": "list_sessions"}, {"op": "set_config_option", "configId": "profile", "value": "x"},
//             {"op": "resume_session", "sessionId": "..."},
//             {"op": "prompt", "text": "...", "wait": false, "tag": "t"}  (answer recorded when it comes),
//             {"op": "cancel"}, {"op": "join"} (wait for every prompt sent without waiting),
//             {"op": "wait_update", "kind": "tool_call", "count": 1}, {"op": "wait_file", "path": "/abs"},
//             {"op": "write_file", "path": "/abs", "content": "..."},
//             {"op": "new_sessions", "count": 50, "prefix": "s"} then "session": "s7" on a prompt]
// }
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { Readable, Writable } from "node:stream";
import * as acp from "@agentclientprotocol/sdk";

const scenario = JSON.parse(readFileSync(process.argv[2], "utf8"));
const events = [];
const record = (event) => events.push(event);
const buffers = { ...(scenario.buffers || {}) };
const terminals = new Map();
let nextTerminal = 1;
let sessionId = null;
let agentCtx = null;

const child = spawn(scenario.agent[0], scenario.agent.slice(1), {
  cwd: scenario.cwd,
  env: { ...process.env, ...(scenario.env || {}) },
  stdio: ["pipe", "pipe", "pipe"],
});
let stderr = "";
child.stderr.on("data", (d) => { stderr += d.toString(); });
const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));

function startTerminal(params) {
  const id = `term-${nextTerminal++}`;
  const proc = spawn(params.command, params.args || [], { cwd: params.cwd || scenario.cwd });
  const term = { proc, output: "", exit: null, limit: params.outputByteLimit ?? null, truncated: false };
  const feed = (d) => {
    term.output += d.toString();
    if (term.limit !== null && Buffer.byteLength(term.output) > term.limit) {
      term.output = term.output.slice(-term.limit);
      term.truncated = true;
    }
  };
  proc.stdout.on("data", feed);
  proc.stderr.on("data", feed);
  term.done = new Promise((resolve) => proc.on("exit", (code, signal) => {
    term.exit = { exitCode: code, signal: signal || null };
    resolve(term.exit);
  }));
  terminals.set(id, term);
  return id;
}

const app = acp.client({ name: "punie-test-client" })
  .onNotification(acp.methods.client.session.update, ({ params }) => {
    record({ type: "update", sessionId: params.sessionId, update: params.update });
  })
  .onRequest(acp.methods.client.session.requestPermission, async ({ params }) => {
    record({ type: "request", method: "session/request_permission", params });
    const mode = scenario.permission || "allow";
    if (mode === "cancel_turn") {
      // What an IDE does when the user stops the turn while it waits for an answer:
      // session/cancel, then the pending permission request answered "cancelled".
      await agentCtx.notify(acp.methods.agent.session.cancel, { sessionId: params.sessionId });
      record({ type: "sent", method: "session/cancel" });
      return { outcome: { outcome: "cancelled" } };
    }
    return { outcome: { outcome: "selected", optionId: mode } };
  })
  .onRequest(acp.methods.client.fs.readTextFile, async ({ params }) => {
    record({ type: "request", method: "fs/read_text_file", params });
    if (!(params.path in buffers)) throw acp.RequestError.resourceNotFound(params.path);
    return { content: buffers[params.path] };
  })
  .onRequest(acp.methods.client.fs.writeTextFile, async ({ params }) => {
    record({ type: "request", method: "fs/write_text_file", params });
    buffers[params.path] = params.content;
    return {};
  })
  .onRequest(acp.methods.client.terminal.create, async ({ params }) => {
    record({ type: "request", method: "terminal/create", params });
    return { terminalId: startTerminal(params) };
  })
  .onRequest(acp.methods.client.terminal.output, async ({ params }) => {
    record({ type: "request", method: "terminal/output", params });
    const t = terminals.get(params.terminalId);
    return { output: t.output, truncated: t.truncated, exitStatus: t.exit };
  })
  .onRequest(acp.methods.client.terminal.waitForExit, async ({ params }) => {
    record({ type: "request", method: "terminal/wait_for_exit", params });
    return await terminals.get(params.terminalId).done;
  })
  .onRequest(acp.methods.client.terminal.kill, async ({ params }) => {
    record({ type: "request", method: "terminal/kill", params });
    terminals.get(params.terminalId).proc.kill("SIGKILL");
    return {};
  })
  .onRequest(acp.methods.client.terminal.release, async ({ params }) => {
    record({ type: "request", method: "terminal/release", params });
    const t = terminals.get(params.terminalId);
    if (t && t.exit === null) t.proc.kill("SIGKILL");
    terminals.delete(params.terminalId);
    return {};
  });

const stream = acp.ndJsonStream(Writable.toWeb(child.stdin), Readable.toWeb(child.stdout));
let failure = null;
try {
  await app.connectWith(stream, async (ctx) => {
    agentCtx = ctx;
    const init = await ctx.request(acp.methods.agent.initialize, {
      protocolVersion: acp.PROTOCOL_VERSION,
      clientCapabilities: scenario.capabilities || {},
      clientInfo: { name: "punie-test-client", version: "1.0.0" },
    });
    record({ type: "response", op: "initialize", result: init });
    const pending = [];
    const sessions = {};  // step "as" name -> session id
    const sid = (step) => (step.session ? sessions[step.session] : sessionId);
    const deadline = (ms) => Date.now() + (ms ?? 120000);
    for (const step of scenario.steps) {
      let result;
      if (step.op === "new_session") {
        result = await ctx.request(acp.methods.agent.session.new,
          { cwd: scenario.cwd, mcpServers: step.mcpServers || [], ...(step.meta ? { _meta: step.meta } : {}) });
        sessionId = result.sessionId;
        if (step.as) sessions[step.as] = sessionId;
      } else if (step.op === "new_sessions") {
        // Many sessions at once (concurrency tests): named PREFIX0..PREFIX(n-1).
        const made = await Promise.all(Array.from({ length: step.count }, () =>
          ctx.request(acp.methods.agent.session.new, { cwd: scenario.cwd, mcpServers: [] })));
        made.forEach((r, i) => { sessions[`${step.prefix}${i}`] = r.sessionId; });
        result = { count: made.length };
      } else if (step.op === "load_session" || step.op === "resume_session") {
        sessionId = step.sessionId;
        const method = step.op === "load_session" ? acp.methods.agent.session.load : acp.methods.agent.session.resume;
        result = await ctx.request(method, { sessionId, cwd: scenario.cwd, mcpServers: step.mcpServers || [] });
      } else if (step.op === "list_sessions") {
        result = await ctx.request(acp.methods.agent.session.list, { cwd: scenario.cwd });
      } else if (step.op === "set_config_option") {
        result = await ctx.request(acp.methods.agent.session.setConfigOption,
          { sessionId, configId: step.configId, value: step.value });
      } else if (step.op === "prompt" && step.wait === false) {
        // Sent without waiting for its answer: the answer is recorded (with the step's tag) when it comes.
        const started = Date.now();
        pending.push(ctx.request(acp.methods.agent.session.prompt,
          { sessionId: sid(step), prompt: [{ type: "text", text: step.text }] }).then(
          (r) => record({ type: "response", op: "prompt", tag: step.tag, session: step.session,
                          seconds: (Date.now() - started) / 1000, result: r }),
          (e) => record({ type: "error", op: "prompt", tag: step.tag, session: step.session,
                          error: { code: e.code, message: String(e.message), data: e.data ?? null } })));
        continue;
      } else if (step.op === "prompt") {
        result = await ctx.request(acp.methods.agent.session.prompt,
          { sessionId: sid(step), prompt: [{ type: "text", text: step.text }] });
      } else if (step.op === "cancel") {
        await ctx.notify(acp.methods.agent.session.cancel, { sessionId: sid(step) });
        record({ type: "sent", method: "session/cancel" });
        continue;
      } else if (step.op === "wait_update") {
        // Until `count` updates of this kind arrived (or the step's timeout: then the scenario fails).
        const until = deadline(step.timeoutMs);
        const seen = () => events.filter((e) => e.type === "update" && e.update.sessionUpdate === step.kind).length;
        while (seen() < (step.count ?? 1)) {
          if (Date.now() > until) throw new Error(`no ${step.count ?? 1} ${step.kind} update(s) in time`);
          await new Promise((r) => setTimeout(r, 20));
        }
        continue;
      } else if (step.op === "wait_file") {
        const until = deadline(step.timeoutMs);
        while (!existsSync(step.path) || readFileSync(step.path, "utf8").trim() === "") {
          if (Date.now() > until) throw new Error(`${step.path} never appeared`);
          await new Promise((r) => setTimeout(r, 20));
        }
        continue;
      } else if (step.op === "write_file") {
        writeFileSync(step.path, step.content ?? "");
        continue;
      } else if (step.op === "join") {
        await Promise.all(pending.splice(0));
        continue;
      } else {
        throw new Error(`unknown step ${step.op}`);
      }
      record({ type: "response", op: step.op, result: result ?? null });
    }
    await Promise.all(pending.splice(0));
  });
} catch (err) {
  failure = String(err && err.stack ? err.stack : err) + (err && err.data ? `\ndata: ${JSON.stringify(err.data)}` : "");
}
child.stdin.end();
const status = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 20000))]);
if (status === null) child.kill("SIGKILL");
process.stdout.write(JSON.stringify({ events, buffers, failure, exit: status, stderr }) + "\n");
