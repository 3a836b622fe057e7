// The API docs page: renders /openapi.json (routes, auth, query parameters, body fields).
// Self-contained on purpose: no CDN, every text put in with textContent.
"use strict";

const AUTH = {
  adminToken: "admin token (Bearer)",
  agentBasic: "SIP login (HTTP Basic)",
  sessionCookie: "session cookie",
  sessionToken: "session token (Bearer)",
};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function typeOf(schema, doc) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  const alts = schema.anyOf || schema.oneOf;
  if (alts) return alts.map((s) => typeOf(s, doc)).join(" | ");
  if (schema.type === "array") return typeOf(schema.items, doc) + "[]";
  if (Array.isArray(schema.type)) return schema.type.join(" | ");
  return schema.format ? schema.type + " (" + schema.format + ")" : schema.type || "any";
}

function fieldTable(rows) {
  const table = el("table");
  const head = el("tr");
  for (const title of ["name", "in", "type", "required", "about"]) head.appendChild(el("th", title));
  table.appendChild(head);
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) tr.appendChild(el("td", cell));
    table.appendChild(tr);
  }
  return table;
}

function operation(path, method, op, doc) {
  const section = el("section");
  section.appendChild(el("h3", method.toUpperCase() + " " + path));
  section.appendChild(el("p", op.summary || ""));
  const schemes = (op.security || []).map((req) => Object.keys(req).map((k) => AUTH[k] || k).join(" + "));
  section.appendChild(el("p", "auth: " + (schemes.length ? schemes.join(", or ") : "none")));
  const rows = [];
  for (const p of op.parameters || []) {
    rows.push([p.name, p.in, typeOf(p.schema, doc), p.required ? "yes" : "", p.description || ""]);
  }
  const body = op.requestBody && op.requestBody.content["application/json"];
  if (body) {
    const schema = doc.components.schemas[body.schema.$ref.split("/").pop()];
    const required = new Set(schema.required || []);
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      rows.push([name, "body", typeOf(prop, doc), required.has(name) ? "yes" : "", prop.description || ""]);
    }
  }
  if (rows.length) section.appendChild(fieldTable(rows));
  return section;
}

async function main() {
  let doc;
  try {
    const response = await fetch("/openapi.json", { headers: { Accept: "application/json" } });
    doc = await response.json();
  } catch (err) {
    document.getElementById("problem").textContent = "the document could not be loaded: " + err.message;
    return;
  }
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op, doc));
    }
  }
  const root = document.getElementById("routes");
  for (const [tag, sections] of byTag) {
    root.appendChild(el("h2", tag));
    for (const section of sections) root.appendChild(section);
  }
}

main();
