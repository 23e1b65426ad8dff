using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Protocol;
using DirBackup.Store;

namespace DirBackup.Rpc;

/// <summary>
/// A call's named parameters, checked against the catalogue before any handler runs: unknown keys,
/// missing keys and wrong types are refused here, once, with the parameter's name in the message.
/// </summary>
public sealed class RpcArgs
{
    private readonly JsonElement _params;
    private readonly MethodSpec _spec;

    private RpcArgs(MethodSpec spec, JsonElement parameters)
    {
        _spec = spec;
        _params = parameters;
    }

    public static RpcArgs Validate(MethodSpec spec, JsonElement parameters)
    {
        if (parameters.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            parameters = EmptyObject;
        }
        if (parameters.ValueKind != JsonValueKind.Object)
        {
            throw DirBackupException.InvalidParams($"{spec.Name}: params must be one object of named parameters");
        }
        foreach (var property in parameters.EnumerateObject())
        {
            if (!spec.Params.TryGetValue(property.Name, out var type))
            {
                throw DirBackupException.InvalidParams($"{spec.Name}: unknown parameter '{property.Name}'");
            }
            if (!type.Accepts(property.Value))
            {
                throw DirBackupException.InvalidParams($"{spec.Name}: parameter '{property.Name}' must be {type.Describe()}, not {Describe(property.Value)}");
            }
        }
        foreach (var (name, type) in spec.Params)
        {
            if (!type.Optional && type.Kind != ParamKind.Any && !parameters.TryGetProperty(name, out _))
            {
                throw DirBackupException.InvalidParams($"{spec.Name}: missing parameter '{name}'");
            }
        }
        return new RpcArgs(spec, parameters);
    }

    private static readonly JsonElement EmptyObject = JsonDocument.Parse("{}").RootElement.Clone();

    private static string Describe(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        _ => "null",
    };

    public string Method => _spec.Name;

    public JsonElement Element(string name) =>
        _params.TryGetProperty(name, out var value) ? value : default;

    public bool Has(string name) =>
        _params.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null;

    public string String(string name) =>
        OptionalString(name) ?? throw DirBackupException.InvalidParams($"{Method}: missing parameter '{name}'");

    public string? OptionalString(string name) =>
        Has(name) ? Element(name).GetString() : null;

    public long Integer(string name) =>
        OptionalInteger(name) ?? throw DirBackupException.InvalidParams($"{Method}: missing parameter '{name}'");

    public long? OptionalInteger(string name)
    {
        if (!Has(name))
        {
            return null;
        }
        var value = Element(name);
        return value.ValueKind == JsonValueKind.String ? long.Parse(value.GetString()!, System.Globalization.CultureInfo.InvariantCulture) : value.GetInt64();
    }

    public int VmId(string name = "vmid") =>
        OptionalVmId(name) ?? throw DirBackupException.InvalidParams($"{Method}: missing parameter '{name}'");

    public int? OptionalVmId(string name = "vmid")
    {
        var value = OptionalInteger(name);
        if (value is null)
        {
            return null;
        }
        if (!VolumeName.IsValidVmId(value.Value))
        {
            throw DirBackupException.InvalidParams($"{Method}: parameter '{name}' is not a guest id (100-999999999): {value}");
        }
        return (int)value.Value;
    }

    public bool Boolean(string name)
    {
        var value = Element(name);
        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.Number => value.GetInt64() != 0,
            _ => false,
        };
    }

    public byte[] Bytes(string name)
    {
        try
        {
            return Convert.FromBase64String(String(name));
        }
        catch (FormatException)
        {
            throw DirBackupException.InvalidParams($"{Method}: parameter '{name}' is not base64");
        }
    }

    public VolumeName Volume(string name = "volname") => VolumeName.Parse(String(name));

    public StorageConfig Storage() => StorageConfig.From(OptionalString("storeid"), Element("scfg"));

    /// <summary>The content types PVE asks for; null when it asks for all.</summary>
    public IReadOnlyList<string>? StringList(string name)
    {
        if (!Has(name))
        {
            return null;
        }
        var list = new List<string>();
        foreach (var item in Element(name).EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.String)
            {
                throw DirBackupException.InvalidParams($"{Method}: parameter '{name}' must be an array of strings");
            }
            list.Add(item.GetString()!);
        }
        return list;
    }
}
