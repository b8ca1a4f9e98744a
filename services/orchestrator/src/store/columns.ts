/**
 * Converting between SQLite column values and the records the repositories
 * return. SQLite has no booleans, dates or JSON: they are stored as 0/1,
 * ISO-8601 text (`Date.toISOString()`, UTC, millisecond precision, so text
 * order is time order) and JSON text. A value that cannot be read back means
 * the file was edited behind banger's back: it is reported, never guessed at.
 */
import { InternalError } from "@banger/common";

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** Thrown when a stored value is not one this code writes. */
export function corrupt(where: string, detail: string): InternalError {
  return new InternalError(`database value ${where} is unreadable: ${detail}`, { reason: "DATABASE_CORRUPT" });
}

export function toTimestamp(date: Date): string {
  return date.toISOString();
}

export function fromTimestamp(text: string, where: string): Date {
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) throw corrupt(where, `not a timestamp: ${JSON.stringify(text)}`);
  return date;
}

export function fromNullableTimestamp(text: string | null, where: string): Date | null {
  return text === null ? null : fromTimestamp(text, where);
}

export function toFlag(value: boolean): 0 | 1 {
  return value ? 1 : 0;
}

export function fromFlag(value: number, where: string): boolean {
  if (value === 0) return false;
  if (value === 1) return true;
  throw corrupt(where, `not 0 or 1: ${value}`);
}

export function oneOf<T extends string>(allowed: readonly T[], value: string, where: string): T {
  const found = allowed.find((candidate) => candidate === value);
  if (found === undefined) throw corrupt(where, `unknown value ${JSON.stringify(value)}`);
  return found;
}

export function toJson(value: JsonValue): string {
  return JSON.stringify(value);
}

export function parseJson(text: string, where: string): JsonValue {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw corrupt(where, error instanceof Error ? error.message : String(error));
  }
  if (!isJsonValue(value)) throw corrupt(where, "not JSON data");
  return value;
}

export function isJsonObject(value: JsonValue): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function parseJsonObject(text: string, where: string): JsonObject {
  const value = parseJson(text, where);
  if (!isJsonObject(value)) throw corrupt(where, "not a JSON object");
  return value;
}

export function stringField(object: JsonObject, key: string, where: string): string {
  const value = object[key];
  if (typeof value !== "string") throw corrupt(where, `"${key}" is not a string`);
  return value;
}

export function optionalStringField(object: JsonObject, key: string, where: string): string | undefined {
  return object[key] === undefined ? undefined : stringField(object, key, where);
}

export function nullableStringField(object: JsonObject, key: string, where: string): string | null {
  return object[key] === null ? null : stringField(object, key, where);
}

export function numberField(object: JsonObject, key: string, where: string): number {
  const value = object[key];
  if (typeof value !== "number") throw corrupt(where, `"${key}" is not a number`);
  return value;
}

export function booleanField(object: JsonObject, key: string, where: string): boolean {
  const value = object[key];
  if (typeof value !== "boolean") throw corrupt(where, `"${key}" is not true or false`);
  return value;
}

export function objectField(object: JsonObject, key: string, where: string): JsonObject {
  const value = object[key];
  if (value === undefined || !isJsonObject(value)) throw corrupt(where, `"${key}" is not an object`);
  return value;
}

export function stringArrayField(object: JsonObject, key: string, where: string): string[] {
  const value = object[key];
  if (!Array.isArray(value)) throw corrupt(where, `"${key}" is not a list`);
  return value.map((item) => {
    if (typeof item !== "string") throw corrupt(where, `"${key}" holds a non-string`);
    return item;
  });
}

function isJsonValue(value: unknown): value is JsonValue {
  if (value === null) return true;
  switch (typeof value) {
    case "string":
    case "boolean":
      return true;
    case "number":
      return Number.isFinite(value);
    case "object":
      return Array.isArray(value)
        ? value.every(isJsonValue)
        : Object.values(value as Record<string, unknown>).every(isJsonValue);
    default:
      return false;
  }
}
