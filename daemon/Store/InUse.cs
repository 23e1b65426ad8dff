using System.Collections.Concurrent;

namespace DirBackup.Store;

/// <summary>
/// Backups this daemon is reading for a restore. A backup in use cannot be deleted (or, later, merged) until
/// the restore's cleanup ends its use.
/// </summary>
public static class InUse
{
    private static readonly ConcurrentDictionary<(string Root, VolumeName Volume), int> Uses = new();

    public static void Acquire(string root, VolumeName volume) => Uses.AddOrUpdate((root, volume), 1, (_, n) => n + 1);

    public static void ReleaseAll(string root, VolumeName volume) => Uses.TryRemove((root, volume), out _);

    public static bool IsInUse(string root, VolumeName volume) => Uses.ContainsKey((root, volume));
}
