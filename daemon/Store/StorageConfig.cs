using System.Text.Json;
using DirBackup.Errors;

namespace DirBackup.Store;

/// <summary>
/// The part of a storage.cfg section the daemon needs. storage.cfg stays the only configuration: PVE sends
/// the section with every call and the daemon keeps no copy.
/// </summary>
public sealed record StorageConfig(string StoreId, string Path)
{
    public static StorageConfig From(string? storeId, JsonElement scfg)
    {
        if (scfg.ValueKind != JsonValueKind.Object)
        {
            throw DirBackupException.InvalidParams("invalid parameter 'scfg': expected the storage's configuration object");
        }
        if (!scfg.TryGetProperty("path", out var pathElement) || pathElement.ValueKind != JsonValueKind.String)
        {
            throw DirBackupException.InvalidParams("storage configuration has no 'path'");
        }
        return new StorageConfig(storeId ?? "", CheckPath(pathElement.GetString()!));
    }

    /// <summary>An absolute, normalised path without control characters: the storage root everything else lives under.</summary>
    public static string CheckPath(string path, string what = "storage path")
    {
        if (path.Length == 0 || path[0] != '/' || path.Any(char.IsControl) || path.Length > 4096)
        {
            throw DirBackupException.InvalidParams($"{what} '{path}' is not an absolute path");
        }
        foreach (var part in path.Split('/'))
        {
            if (part is "." or "..")
            {
                throw DirBackupException.InvalidParams($"{what} '{path}' contains '.' or '..'");
            }
        }
        return path.Length > 1 ? path.TrimEnd('/') : path;
    }
}
