/**
 * A record written to and read from plain JSON by one list of its fields: each
 * field names how its value is written and how it is read back (and checked).
 * The list is typed by the record, so a field added to it and not to the list
 * (or the other way round) fails to compile.
 */
import {
  booleanField,
  fromNullableTimestamp,
  fromTimestamp,
  type JsonObject,
  type JsonValue,
  nullableStringField,
  numberField,
  objectField,
  oneOf,
  stringArrayField,
  stringField,
  toTimestamp,
} from "./columns.js";

/** How one field is written to JSON and read back from it. */
export interface FieldCodec<T> {
  write(value: T): JsonValue;
  read(json: JsonObject, key: string, where: string): T;
}

/** A codec for every field of record `R`, and for nothing else. */
export type RecordCodec<R> = { readonly [K in keyof R]-?: FieldCodec<R[K]> };

export function writeRecord<R>(codec: RecordCodec<R>, record: R): JsonObject {
  const json: JsonObject = {};
  for (const key of Object.keys(codec) as (keyof R & string)[]) json[key] = codec[key].write(record[key]);
  return json;
}

export function readRecord<R>(codec: RecordCodec<R>, json: JsonObject, where: string): R {
  const record: Partial<Record<keyof R, unknown>> = {};
  for (const key of Object.keys(codec) as (keyof R & string)[]) record[key] = codec[key].read(json, key, where);
  return record as R;
}

const asIs = <T extends JsonValue>(read: FieldCodec<T>["read"]): FieldCodec<T> => ({ write: (value) => value, read });

export const text = asIs(stringField);
export const nullableText = asIs(nullableStringField);
export const number = asIs(numberField);
export const flag = asIs(booleanField);
export const object = asIs(objectField);

export const texts: FieldCodec<readonly string[]> = { write: (value) => [...value], read: stringArrayField };

export function choice<T extends string>(allowed: readonly T[]): FieldCodec<T> {
  return { write: (value) => value, read: (json, key, where) => oneOf(allowed, stringField(json, key, where), where) };
}

export const timestamp: FieldCodec<Date> = {
  write: toTimestamp,
  read: (json, key, where) => fromTimestamp(stringField(json, key, where), where),
};

export const nullableTimestamp: FieldCodec<Date | null> = {
  write: (value) => value && toTimestamp(value),
  read: (json, key, where) => fromNullableTimestamp(nullableStringField(json, key, where), where),
};
