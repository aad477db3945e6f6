// The API reference at /docs, rendered from /openapi.json by this file alone: no third-party script runs on the
// API's origin (where the web page keeps the API key), and it works on an offline robot.
"use strict";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resolve(schema, spec) {
  let s = schema || {};
  for (let i = 0; i < 10 && s.$ref; i++) {
    s = s.$ref.split("/").slice(1).reduce((o, k) => (o || {})[k], spec) || {};
  }
  return s;
}

function describeSchema(schema, spec) {
  const s = resolve(schema, spec);
  const out = {};
  for (const [name, prop] of Object.entries(s.properties || {})) {
    const p = resolve(prop, spec);
    const kinds = (p.anyOf || p.oneOf || [p]).map((x) => resolve(x, spec).type || resolve(x, spec).title || "?");
    let text = kinds.join(" | ") + ((s.required || []).includes(name) ? " (required)" : "");
    if (p.enum) text += " one of " + p.enum.join(", ");
    if (p.default !== undefined) text += " default " + JSON.stringify(p.default);
    if (p.description) text += " — " + p.description;
    out[name] = text;
  }
  return out;
}

function renderOperation(path, method, op, spec) {
  const section = el("section", null, "panel");
  section.id = (op.operationId || method + path).replace(/[^A-Za-z0-9_-]/g, "_");
  section.appendChild(el("h2", method.toUpperCase() + " " + path));
  if (op.summary) section.appendChild(el("p", op.summary));
  if (op.description) section.appendChild(el("p", op.description, "muted"));
  const list = el("ul", null, "voices");
  for (const param of op.parameters || []) {
    list.appendChild(el("li", param.in + " " + param.name + (param.required ? " (required)" : "") +
      (param.description ? " — " + param.description : "")));
  }
  const body = (op.requestBody || {}).content || {};
  for (const [type, media] of Object.entries(body)) {
    list.appendChild(el("li", "body: " + type));
    for (const [name, text] of Object.entries(describeSchema(media.schema, spec))) {
      list.appendChild(el("li", "  " + name + ": " + text, "muted"));
    }
  }
  for (const [status, response] of Object.entries(op.responses || {})) {
    list.appendChild(el("li", status + ": " + (response.description || "")));
  }
  section.appendChild(list);
  return section;
}

async function init() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description || "";
  const root = document.getElementById("operations");
  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) root.appendChild(renderOperation(path, method, op, spec));
  }
  document.body.dataset.state = "done";
}

document.addEventListener("DOMContentLoaded", () => {
  init().catch((e) => {
    document.getElementById("operations").textContent = "Could not load /openapi.json: " + e.message;
    document.body.dataset.state = "error";
  });
});
