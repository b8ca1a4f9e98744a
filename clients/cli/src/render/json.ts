import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

/** Messages as one indented JSON array on stdout: what `--json` prints for a list of them. */
export function printJsonList<Desc extends DescMessage>(schema: Desc, messages: readonly MessageShape<Desc>[]): void {
  process.stdout.write(
    JSON.stringify(
      messages.map((message) => toJson(schema, message)),
      null,
      2,
    ) + "\n",
  );
}
