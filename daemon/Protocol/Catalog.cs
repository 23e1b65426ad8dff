using System.Collections.Frozen;
using System.Text.Json;

namespace DirBackup.Protocol;

/// <summary>
/// protocol/catalog.json, embedded: the method catalogue, parameter shapes and error codes both sides
/// check themselves against. The daemon validates every call's parameters from it, so a shape lives in one place.
/// </summary>
public sealed class Catalog
{
    private Catalog(string version, FrozenDictionary<string, MethodSpec> methods, FrozenDictionary<string, int> errors, long maxRequestLineBytes)
    {
        ProtocolVersion = version;
        Methods = methods;
        Errors = errors;
        MaxRequestLineBytes = maxRequestLineBytes;
    }

    public string ProtocolVersion { get; }
    public int ProtocolMajor => int.Parse(ProtocolVersion.Split('.')[0], System.Globalization.CultureInfo.InvariantCulture);
    public FrozenDictionary<string, MethodSpec> Methods { get; }
    public FrozenDictionary<string, int> Errors { get; }
    public long MaxRequestLineBytes { get; }

    public static Catalog Shared { get; } = Load();

    private static Catalog Load()
    {
        using var stream = typeof(Catalog).Assembly.GetManifestResourceStream("DirBackup.protocol.catalog.json")
            ?? throw new InvalidOperationException("protocol catalogue is not embedded in the daemon");
        using var doc = JsonDocument.Parse(stream);
        var root = doc.RootElement;
        var methods = new Dictionary<string, MethodSpec>();
        foreach (var method in root.GetProperty("methods").EnumerateObject())
        {
            var parameters = method.Value.GetProperty("params").EnumerateObject()
                .ToDictionary(p => p.Name, p => ParamType.Parse(p.Value.GetString()!));
            methods[method.Name] = new MethodSpec(method.Name, method.Value.GetProperty("side").GetString()!, parameters.ToFrozenDictionary());
        }
        var errors = root.GetProperty("errors").EnumerateObject().ToDictionary(e => e.Name, e => e.Value.GetProperty("code").GetInt32());
        return new Catalog(
            root.GetProperty("protocol").GetString()!,
            methods.ToFrozenDictionary(),
            errors.ToFrozenDictionary(),
            root.GetProperty("framing").GetProperty("max-request-line-bytes").GetInt64());
    }
}

public sealed record MethodSpec(string Name, string Side, FrozenDictionary<string, ParamType> Params);

public enum ParamKind
{
    String,
    Integer,
    Boolean,
    Object,
    Array,
    Bytes,
    Any,
}

public readonly record struct ParamType(ParamKind Kind, bool Optional)
{
    public static ParamType Parse(string text)
    {
        bool optional = text.EndsWith('?');
        var kind = (optional ? text[..^1] : text) switch
        {
            "string" => ParamKind.String,
            "integer" => ParamKind.Integer,
            "boolean" => ParamKind.Boolean,
            "object" => ParamKind.Object,
            "array" => ParamKind.Array,
            "bytes" => ParamKind.Bytes,
            "any" => ParamKind.Any,
            _ => throw new InvalidOperationException($"catalogue type '{text}' is unknown"),
        };
        return new ParamType(kind, optional);
    }

    public bool Accepts(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.Null => Optional || Kind == ParamKind.Any,
        JsonValueKind.String => Kind is ParamKind.String or ParamKind.Bytes or ParamKind.Any || (Kind == ParamKind.Integer && IsIntegerString(value.GetString()!)),
        JsonValueKind.Number => Kind is ParamKind.Any || (Kind == ParamKind.Integer && value.TryGetInt64(out _)) || (Kind == ParamKind.Boolean && value.TryGetInt64(out long b) && b is 0 or 1),
        JsonValueKind.True or JsonValueKind.False => Kind is ParamKind.Boolean or ParamKind.Any,
        JsonValueKind.Object => Kind is ParamKind.Object or ParamKind.Any,
        JsonValueKind.Array => Kind is ParamKind.Array or ParamKind.Any,
        _ => false,
    };

    /// <summary>Perl does not tell strings from numbers: a vmid read from a config line arrives as "100".</summary>
    private static bool IsIntegerString(string s) => s.Length is > 0 and <= 18 && s.All(char.IsAsciiDigit);

    public string Describe() => Kind switch
    {
        ParamKind.Bytes => "a base64 string",
        ParamKind.Integer => "an integer",
        ParamKind.Object => "an object",
        ParamKind.Array => "an array",
        _ => "a " + Kind.ToString().ToLowerInvariant(),
    } + (Optional ? " or null" : "");
}
