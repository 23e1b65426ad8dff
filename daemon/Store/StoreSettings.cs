namespace DirBackup.Store;

/// <summary>Limits of the storage layer; the daemon and the tests build one, nothing reads them from elsewhere.</summary>
public sealed record StoreSettings
{
    /// <summary>How long activate_storage and check_connection may wait for the storage path (a hung NFS mount must not hang PVE).</summary>
    public TimeSpan ActivationTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>status runs in pvestatd every few seconds and the shim gives it one second in all.</summary>
    public TimeSpan StatusTimeout { get; init; } = TimeSpan.FromMilliseconds(800);

    /// <summary>How long a short operation waits for a guest or storage lock before answering busy.</summary>
    public TimeSpan LockWait { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Upper bound of a backup's notes, in UTF-8 bytes.</summary>
    public int MaxNotesBytes { get; init; } = 64 * 1024;
}
