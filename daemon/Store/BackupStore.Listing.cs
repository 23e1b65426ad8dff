using System.Globalization;
using System.IO.Enumeration;
using System.Text.Json;
using System.Text.Json.Serialization;
using DirBackup.Errors;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    /// <summary>
    /// Committed backups, one manifest read each; a damaged manifest is skipped and reported, and a backup being
    /// merged away is left out unless asked for.
    /// </summary>
    public List<BackupEntry> ListBackups(int? vmid, Action<string>? warn = null, bool includeMerging = false)
    {
        var result = new List<BackupEntry>();
        if (vmid is int one)
        {
            ListGuest(one, result, warn, includeMerging);
        }
        else
        {
            foreach (var dir in EnumerateDirectories(Root))
            {
                var id = VolumeName.ParseVmId(Path.GetFileName(dir));
                if (id is int guest)
                {
                    ListGuest(guest, result, warn, includeMerging);
                }
            }
        }
        return result.OrderBy(b => b.Volume.ToString(), StringComparer.Ordinal).ToList();
    }

    private void ListGuest(int vmid, List<BackupEntry> result, Action<string>? warn, bool includeMerging)
    {
        var guestDir = GuestDir(vmid);
        var previous = ManifestCache.Get(guestDir);
        var current = new ManifestCache.GuestEntries();
        foreach (var (dirName, mtime) in EnumerateBackupDirectories(guestDir))
        {
            if (VolumeName.FromDirectory(vmid, dirName) is not VolumeName name)
            {
                continue;
            }
            if (previous is null || !previous.Backups.TryGetValue(dirName, out var cached) || cached.DirectoryMTimeTicks != mtime)
            {
                var file = Path.Combine(guestDir, dirName, Manifest.FileName);
                try
                {
                    cached = new ManifestCache.CachedManifest(mtime, Manifest.FromBytes(File.ReadAllBytes(file)));
                }
                catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
                {
                    warn?.Invoke($"skipping '{Path.Combine(guestDir, dirName)}': no readable manifest ({e.Message})");
                    continue;
                }
            }
            current.Backups[dirName] = cached;
            if (includeMerging || !cached.Manifest.Merging)
            {
                result.Add(new BackupEntry(name, cached.Manifest));
            }
        }
        if (current.Backups.Count == 0)
        {
            ManifestCache.Forget(guestDir);
        }
        else
        {
            ManifestCache.Set(guestDir, current);
        }
    }

    /// <summary>Subdirectories with their mtime, from one lstat each.</summary>
    private static List<(string Name, long MTimeTicks)> EnumerateBackupDirectories(string guestDir)
    {
        try
        {
            var entries = new FileSystemEnumerable<(string, long)>(guestDir,
                (ref FileSystemEntry entry) => (entry.FileName.ToString(), entry.LastWriteTimeUtc.UtcTicks),
                new EnumerationOptions { RecurseSubdirectories = false, AttributesToSkip = 0, IgnoreInaccessible = false })
            {
                ShouldIncludePredicate = (ref FileSystemEntry entry) => entry.IsDirectory && entry.FileName.Length > 0 && entry.FileName[0] != '.',
            };
            return entries.ToList();
        }
        catch (DirectoryNotFoundException)
        {
            return [];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DirBackupException.Io($"cannot list '{guestDir}': {e.Message}");
        }
    }

    private static IEnumerable<string> EnumerateDirectories(string path)
    {
        try
        {
            return Directory.EnumerateDirectories(path).ToList();
        }
        catch (DirectoryNotFoundException)
        {
            return [];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DirBackupException.Io($"cannot list '{path}': {e.Message}");
        }
    }

    /// <summary>A list_volumes entry with every key PVE's content index knows (PVE-API.md 2.6).</summary>
    public VolumeInfo ToVolumeInfo(BackupEntry entry)
    {
        var parent = entry.Manifest.Parents.FirstOrDefault();
        return new VolumeInfo(
            VolId: entry.Volume.VolId(config.StoreId),
            Content: "backup",
            Format: VolumeFormat,
            Size: entry.Manifest.Size,
            CTime: entry.Volume.BackupTime,
            VmId: entry.Volume.VmId,
            SubType: entry.Volume.Type.Name(),
            Notes: entry.Manifest.Notes,
            Protected: entry.Manifest.Protected,
            Parent: parent is null ? null : $"{config.StoreId}:backup/{entry.Volume.VmId.ToString(CultureInfo.InvariantCulture)}/{parent}");
    }

    /// <summary>The content index's free-text format of every backup on this storage.</summary>
    public const string VolumeFormat = "dirbackup";
}

public readonly record struct BackupEntry(VolumeName Volume, Manifest Manifest);

public sealed record VolumeInfo(
    [property: JsonPropertyName("volid")] string VolId,
    [property: JsonPropertyName("content")] string Content,
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("size")] long Size,
    [property: JsonPropertyName("ctime")] long CTime,
    [property: JsonPropertyName("vmid")] int VmId,
    [property: JsonPropertyName("subtype")] string SubType,
    [property: JsonPropertyName("notes"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Notes,
    [property: JsonPropertyName("protected"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] bool Protected,
    [property: JsonPropertyName("parent"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Parent);
