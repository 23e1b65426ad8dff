using System.Text;
using System.Text.Json;
using DirBackup.Errors;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    public const string NotesAttribute = "notes";
    public const string ProtectedAttribute = "protected";

    /// <summary>PVE semantics: an unsupported attribute reads as undef (null), it is not an error.</summary>
    public object? GetAttribute(VolumeName volume, string attribute)
    {
        var manifest = ReadManifest(volume);
        return attribute switch
        {
            NotesAttribute => manifest.Notes,
            ProtectedAttribute => manifest.Protected,
            _ => null,
        };
    }

    public async Task UpdateAttributeAsync(VolumeName volume, string attribute, JsonElement value, CancellationToken cancellationToken)
    {
        Action<Manifest> change = attribute switch
        {
            NotesAttribute => SetNotes(CheckNotes(value)),
            ProtectedAttribute => SetProtected(ParseFlag(value)),
            _ => throw new DirBackupException(ErrorCode.UnsupportedAttribute, $"attribute '{attribute}' is not supported for storage type 'dirbackup'"),
        };
        using var guestLock = await LockGuestIfPresentAsync(volume, cancellationToken).ConfigureAwait(false);
        var manifest = ReadManifest(volume);
        change(manifest);
        WriteManifest(volume, manifest);
    }

    private static Action<Manifest> SetNotes(string? notes) => m => m.Notes = notes;
    private static Action<Manifest> SetProtected(bool flag) => m => m.Protected = flag;

    private async Task<FileLock> LockGuestIfPresentAsync(VolumeName volume, CancellationToken cancellationToken)
    {
        if (!Directory.Exists(BackupDir(volume)))
        {
            throw DirBackupException.NotFound($"backup '{volume}' does not exist on storage '{config.StoreId}'");
        }
        return await LockGuestAsync(volume.VmId, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Notes are UTF-8 text; an empty string clears them (what the GUI sends).</summary>
    private string? CheckNotes(JsonElement value)
    {
        if (value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (value.ValueKind != JsonValueKind.String)
        {
            throw DirBackupException.InvalidValue("notes must be a string");
        }
        string notes;
        try
        {
            notes = value.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw DirBackupException.InvalidValue("notes are not valid UTF-8 text");
        }
        int bytes;
        try
        {
            bytes = StrictUtf8.GetByteCount(notes);
        }
        catch (EncoderFallbackException)
        {
            throw DirBackupException.InvalidValue("notes are not valid UTF-8 text");
        }
        if (bytes > settings.MaxNotesBytes)
        {
            throw DirBackupException.InvalidValue($"notes are {bytes} bytes long; the limit is {settings.MaxNotesBytes}");
        }
        foreach (char c in notes)
        {
            if (char.IsControl(c) && c is not ('\n' or '\r' or '\t'))
            {
                throw DirBackupException.InvalidValue($"notes contain the control character U+{(int)c:X4}");
            }
        }
        return notes.Length == 0 ? null : notes;
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Perl sends booleans as 1/0, "1"/"0" or JSON booleans, depending on where the value came from.</summary>
    private static bool ParseFlag(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False or JsonValueKind.Null => false,
        JsonValueKind.Number when value.TryGetInt64(out long n) && n is 0 or 1 => n == 1,
        JsonValueKind.String when value.GetString() is "0" or "1" or "" => value.GetString() == "1",
        _ => throw DirBackupException.InvalidValue($"protected must be 0 or 1, not {value.GetRawText()}"),
    };
}
